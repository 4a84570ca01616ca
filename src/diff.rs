//! The first difference between two sets of settings, named by its field path
//! (`siren.steps: 200 -> 7`), for errors and notes that say what changed.

use serde::Serialize;
use serde_json::Value;

/// The first field that differs between `old` and `new` (as serialised), as
/// `path.to.field: old -> new`; `None` when they serialise equally.
pub fn first_difference<T: Serialize + ?Sized>(old: &T, new: &T) -> Option<String> {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    value_difference("", &a, &b)
}

/// [`first_difference`] of two JSON values below `path` (empty at the top).
pub fn value_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = value_difference(&p, v, w) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{p}: {v} -> (absent)")),
                }
            }
            y.keys().find(|k| !x.contains_key(*k)).map(|k| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                format!("{p}: (absent) -> {}", y[k])
            })
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} -> {b}")),
    }
}

/// One field that differs between two values: its path, and its value in each (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// Every field that differs between `old` and `new`, objects compared field by field (in
/// `old`'s key order, then the fields only `new` has), anything else as a whole.
pub fn all_differences(old: &Value, new: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    collect("", old, new, &mut out);
    out
}

fn collect(path: &str, a: &Value, b: &Value, out: &mut Vec<Difference>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => collect(&join(k), v, w, out),
                    None => out.push(Difference {
                        path: join(k),
                        old: Some(v.clone()),
                        new: None,
                    }),
                }
            }
            for (k, w) in y.iter().filter(|(k, _)| !x.contains_key(*k)) {
                out.push(Difference {
                    path: join(k),
                    old: None,
                    new: Some(w.clone()),
                });
            }
        }
        _ if a == b => {}
        _ => out.push(Difference {
            path: path.to_owned(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_first_differing_field() {
        let a = json!({"siren": {"steps": 200, "lr": 0.1}, "seed": 0});
        assert_eq!(first_difference(&a, &a.clone()), None);
        let b = json!({"siren": {"steps": 7, "lr": 0.1}, "seed": 0});
        assert_eq!(
            first_difference(&a, &b).as_deref(),
            Some("siren.steps: 200 -> 7")
        );
        let c = json!({"siren": {"steps": 200, "lr": 0.1}, "seed": 0, "beam": 2});
        assert_eq!(
            first_difference(&a, &c).as_deref(),
            Some("beam: (absent) -> 2")
        );
        let d = json!({"siren": {"steps": 200}, "seed": 0});
        assert_eq!(
            first_difference(&a, &d).as_deref(),
            Some("siren.lr: 0.1 -> (absent)")
        );
    }

    #[test]
    fn lists_every_differing_field() {
        let a = json!({"siren": {"steps": 200, "lr": 0.1}, "seed": 0, "clip": "x"});
        assert!(all_differences(&a, &a.clone()).is_empty());
        let b = json!({"siren": {"steps": 7, "lr": 0.1, "tv": 1}, "seed": 3, "clip": "x"});
        let mut got: Vec<(String, Option<Value>, Option<Value>)> = all_differences(&a, &b)
            .into_iter()
            .map(|d| (d.path, d.old, d.new))
            .collect();
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            got,
            [
                ("seed".into(), Some(json!(0)), Some(json!(3))),
                ("siren.steps".into(), Some(json!(200)), Some(json!(7))),
                ("siren.tv".into(), None, Some(json!(1))),
            ]
        );
    }
}
