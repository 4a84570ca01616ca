//! The "shapes world": one or two coloured shapes on a plain background, captioned by a small
//! grammar.
//!
//! Why it exists: Flickr8k's open vocabulary makes the round trip's scores hard to read (is
//! "a dog runs on grass" a good caption of a generated "a cat eating a mouse"?). In this world
//! everything is checkable: a phrase parses to a [`Scene`] ([`grammar::parse`]), a scene draws to
//! a "real photo" ([`render::render`]), every scene has five true captions
//! ([`grammar::captions`]), and [`Scene::describes`] says whether a parsed caption is true of a
//! drawn scene. [`dataset::write_dataset`] writes a captioning dataset in the original Flickr8k
//! layout, so the captioners train on it unchanged.
//!
//! A [`Scene`] is a description: attributes a phrase leaves out (`None`) are drawn at random when
//! rendering ([`Scene::resolve`]). A *concrete* scene has every attribute set and a relation that
//! fixes the geometry (left of, right of, above or below). Every random draw comes from the
//! caller's RNG in a fixed order, so a seed reproduces images and captions exactly.

pub mod classes;
pub mod dataset;
pub mod grammar;
pub mod render;

pub use dataset::{write_dataset, DatasetOptions, DatasetSummary};
pub use grammar::{captions, describe, parse, phrases, vocabulary, ParseError};
pub use render::{render, render_scene};

use rand::Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Diamond,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Diamond => "diamond",
        }
    }
}

/// Colours chosen to stay apart at 64 px under shade jitter, and away from the light neutral
/// backgrounds (hence no white or grey).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Blue,
    Purple,
    Pink,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
        Colour::Black,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
            Colour::Black => "black",
        }
    }

    /// The base sRGB colour before shade jitter.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [210, 35, 35],
            Colour::Orange => [240, 135, 20],
            Colour::Yellow => [235, 205, 25],
            Colour::Green => [40, 160, 60],
            Colour::Blue => [35, 80, 210],
            Colour::Purple => [130, 50, 170],
            Colour::Pink => [240, 110, 180],
            Colour::Black => [35, 35, 35],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Big,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Big];

    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Big => "big",
        }
    }
}

/// Where the single shape of a one-shape scene sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    Left,
    Right,
    Top,
    Bottom,
    Middle,
}

impl Position {
    pub const ALL: [Position; 5] = [
        Position::Left,
        Position::Right,
        Position::Top,
        Position::Bottom,
        Position::Middle,
    ];
}

/// How the first shape of a two-shape scene stands to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
    /// Side by side, in either order (a horizontal arrangement).
    NextTo,
}

impl Relation {
    /// The relations that fix the geometry, which a concrete scene has.
    pub const CONCRETE: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    /// The relation of the second shape to the first.
    pub fn inverse(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
            Relation::NextTo => Relation::NextTo,
        }
    }

    /// Whether the two shapes stand side by side (rather than one above the other).
    pub fn is_horizontal(self) -> bool {
        matches!(
            self,
            Relation::LeftOf | Relation::RightOf | Relation::NextTo
        )
    }
}

/// One shape; `None` attributes are unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Option<Colour>,
    pub size: Option<Size>,
}

impl Object {
    /// A fully specified object whose colour differs from `avoid`.
    fn random<R: Rng + ?Sized>(rng: &mut R, avoid: Option<Colour>) -> Object {
        let shape = pick(rng, &Shape::ALL);
        let colour = random_colour(rng, avoid);
        let size = pick(rng, &Size::ALL);
        Object {
            shape,
            colour: Some(colour),
            size: Some(size),
        }
    }

    fn resolve<R: Rng + ?Sized>(&self, rng: &mut R, avoid: Option<Colour>) -> Object {
        let colour = match self.colour {
            Some(c) => c,
            None => random_colour(rng, avoid),
        };
        let size = match self.size {
            Some(s) => s,
            None => pick(rng, &Size::ALL),
        };
        Object {
            shape: self.shape,
            colour: Some(colour),
            size: Some(size),
        }
    }

    /// Whether this (possibly partial) object is true of `drawn`.
    pub fn describes(&self, drawn: &Object) -> bool {
        self.shape == drawn.shape
            && self.colour.is_none_or(|c| drawn.colour == Some(c))
            && self.size.is_none_or(|s| drawn.size == Some(s))
    }

    fn is_concrete(&self) -> bool {
        self.colour.is_some() && self.size.is_some()
    }
}

/// A scene description: one shape with an optional position, or two shapes with an optional
/// relation (`None`: "a red circle and a blue star", any arrangement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scene {
    One {
        object: Object,
        position: Option<Position>,
    },
    Two {
        first: Object,
        relation: Option<Relation>,
        second: Object,
    },
}

impl Scene {
    /// A concrete scene drawn at random: one shape (with a position) or two shapes of different
    /// colours (with a concrete relation), each half of the time.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Scene {
        if rng.random_bool(0.5) {
            let object = Object::random(rng, None);
            let position = pick(rng, &Position::ALL);
            Scene::One {
                object,
                position: Some(position),
            }
        } else {
            let first = Object::random(rng, None);
            let second = Object::random(rng, first.colour);
            let relation = pick(rng, &Relation::CONCRETE);
            Scene::Two {
                first,
                relation: Some(relation),
                second,
            }
        }
    }

    /// Fills every unspecified attribute at random; "next to" becomes left of or right of. An
    /// unspecified colour of a second shape differs from the first's. A concrete scene is
    /// returned unchanged and draws nothing from `rng`.
    pub fn resolve<R: Rng + ?Sized>(&self, rng: &mut R) -> Scene {
        match *self {
            Scene::One { object, position } => {
                let object = object.resolve(rng, None);
                let position = match position {
                    Some(p) => p,
                    None => pick(rng, &Position::ALL),
                };
                Scene::One {
                    object,
                    position: Some(position),
                }
            }
            Scene::Two {
                first,
                relation,
                second,
            } => {
                let first = first.resolve(rng, second.colour);
                let second = second.resolve(rng, first.colour);
                let relation = match relation {
                    Some(Relation::NextTo) => pick(rng, &[Relation::LeftOf, Relation::RightOf]),
                    Some(r) => r,
                    None => pick(rng, &Relation::CONCRETE),
                };
                Scene::Two {
                    first,
                    relation: Some(relation),
                    second,
                }
            }
        }
    }

    /// Whether every attribute is set and the relation fixes the geometry.
    pub fn is_concrete(&self) -> bool {
        match self {
            Scene::One { object, position } => object.is_concrete() && position.is_some(),
            Scene::Two {
                first,
                relation,
                second,
            } => {
                first.is_concrete()
                    && second.is_concrete()
                    && relation.is_some_and(|r| r != Relation::NextTo)
            }
        }
    }

    /// Whether this description is true of the `drawn` (concrete) scene: every attribute it
    /// gives matches, "b below a" is "a above b", "next to" holds of a horizontal arrangement in
    /// either order, and "a and b" of any arrangement.
    pub fn describes(&self, drawn: &Scene) -> bool {
        match (self, drawn) {
            (
                Scene::One { object, position },
                Scene::One {
                    object: d,
                    position: dp,
                },
            ) => object.describes(d) && position.is_none_or(|p| *dp == Some(p)),
            (Scene::Two { .. }, Scene::Two { .. }) => {
                let (a, rel, b) = self.canonical();
                let (da, drel, db) = drawn.canonical();
                let same = a.describes(&da) && b.describes(&db);
                let swapped = a.describes(&db) && b.describes(&da);
                match rel {
                    None => same || swapped,
                    Some(Relation::NextTo) => {
                        drel.is_some_and(Relation::is_horizontal) && (same || swapped)
                    }
                    Some(r) => drel == Some(r) && same,
                }
            }
            _ => false,
        }
    }

    /// A two-shape scene with "right of" and "below" turned round into "left of" and "above".
    fn canonical(&self) -> (Object, Option<Relation>, Object) {
        match *self {
            Scene::Two {
                first,
                relation,
                second,
            } => match relation {
                Some(r @ (Relation::RightOf | Relation::Below)) => {
                    (second, Some(r.inverse()), first)
                }
                r => (first, r, second),
            },
            Scene::One { object, .. } => (object, None, object),
        }
    }
}

impl std::fmt::Display for Scene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self))
    }
}

fn pick<T: Copy, R: Rng + ?Sized>(rng: &mut R, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn random_colour<R: Rng + ?Sized>(rng: &mut R, avoid: Option<Colour>) -> Colour {
    let choices: Vec<Colour> = Colour::ALL
        .into_iter()
        .filter(|&c| Some(c) != avoid)
        .collect();
    pick(rng, &choices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn obj(shape: Shape, colour: Colour, size: Size) -> Object {
        Object {
            shape,
            colour: Some(colour),
            size: Some(size),
        }
    }

    #[test]
    fn random_scenes_are_concrete_and_resolve_is_identity_on_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (mut one, mut two) = (0, 0);
        for _ in 0..400 {
            let s = Scene::random(&mut rng);
            assert!(s.is_concrete(), "{s:?}");
            let mut probe = ChaCha8Rng::seed_from_u64(9);
            assert_eq!(s.resolve(&mut probe), s);
            assert_eq!(
                probe,
                ChaCha8Rng::seed_from_u64(9),
                "resolve drew from the rng"
            );
            assert!(s.describes(&s));
            match s {
                Scene::One { .. } => one += 1,
                Scene::Two { first, second, .. } => {
                    assert_ne!(first.colour, second.colour);
                    two += 1
                }
            }
        }
        assert!(one > 150 && two > 150, "{one} one-shape, {two} two-shape");
    }

    #[test]
    fn descriptions_are_checked_against_drawn_scenes() {
        let a = obj(Shape::Circle, Colour::Red, Size::Big);
        let b = obj(Shape::Square, Colour::Blue, Size::Small);
        let drawn = Scene::Two {
            first: a,
            relation: Some(Relation::LeftOf),
            second: b,
        };
        let two = |first, relation, second| Scene::Two {
            first,
            relation,
            second,
        };
        assert!(two(b, Some(Relation::RightOf), a).describes(&drawn));
        assert!(two(b, Some(Relation::NextTo), a).describes(&drawn));
        assert!(two(b, None, a).describes(&drawn));
        assert!(!two(b, Some(Relation::LeftOf), a).describes(&drawn));
        assert!(!two(a, Some(Relation::Above), b).describes(&drawn));
        let vertical = two(a, Some(Relation::Below), b);
        assert!(two(b, Some(Relation::Above), a).describes(&vertical));
        assert!(!two(a, Some(Relation::NextTo), b).describes(&vertical));
        let partial = Object {
            shape: Shape::Circle,
            colour: None,
            size: None,
        };
        assert!(two(partial, Some(Relation::LeftOf), b).describes(&drawn));
        let blue_circle = Object {
            colour: Some(Colour::Blue),
            ..partial
        };
        assert!(!two(blue_circle, Some(Relation::LeftOf), b).describes(&drawn));
        let one = Scene::One {
            object: a,
            position: Some(Position::Top),
        };
        assert!(Scene::One {
            object: partial,
            position: None
        }
        .describes(&one));
        assert!(!Scene::One {
            object: a,
            position: Some(Position::Left)
        }
        .describes(&one));
        assert!(!one.describes(&drawn));
    }

    #[test]
    fn resolve_fills_everything_and_keeps_what_was_given() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let partial = Object {
            shape: Shape::Star,
            colour: None,
            size: None,
        };
        let given = obj(Shape::Star, Colour::Green, Size::Big);
        for _ in 0..100 {
            let d = Scene::Two {
                first: given,
                relation: Some(Relation::NextTo),
                second: partial,
            };
            let r = d.resolve(&mut rng);
            assert!(r.is_concrete() && d.describes(&r), "{r:?}");
            let Scene::Two {
                first,
                relation,
                second,
            } = r
            else {
                unreachable!()
            };
            assert_eq!(first, given);
            assert_ne!(second.colour, Some(Colour::Green));
            assert!(relation.unwrap().is_horizontal());
            let d = Scene::One {
                object: partial,
                position: None,
            };
            let r = d.resolve(&mut rng);
            assert!(r.is_concrete() && d.describes(&r));
        }
    }
}
