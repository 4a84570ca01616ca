//! The shapes world's caption grammar, in both directions: captions of a scene, and a parser
//! that reads them (and looser variants) back into a [`Scene`].
//!
//! One grammar serves both so that every caption a captioner is trained on can be parsed, and a
//! generated caption can be checked against the prompt it came from. Captions are lowercase words
//! separated by single spaces, with no punctuation, so `text::normalize` only drops the articles
//! "a" (one letter); the parser treats articles as optional, so normalised captions parse to the
//! same scene.
//!
//! ```text
//! phrase   := ["there" "is"] object [tail]
//! tail     := position | relation object | "and" object
//! object   := ["a" | "an" | "the"] ["small" | "big"] [colour] shape
//! colour   := red | orange | yellow | green | blue | purple | pink | black
//! shape    := circle | square | triangle | star | diamond
//! position := "on" ["the"] ("left" | "right") | "at" ["the"] ("top" | "bottom")
//!           | "in" ["the"] ("middle" | "centre" | "center")
//! relation := ["to" ["the"]] ("left" | "right") "of" | "above" | "below" | "next" "to"
//! ```

use rand::seq::SliceRandom;
use rand::Rng;

use super::{pick, Colour, Object, Position, Relation, Scene, Shape, Size};

/// The phrase could not be read as a scene description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Words outside the grammar's vocabulary (lowercased, punctuation stripped), in order of
    /// first appearance.
    UnknownWords { phrase: String, words: Vec<String> },
    /// Known words in an order the grammar does not allow.
    Unexpected {
        phrase: String,
        /// What the grammar allows at that point.
        expected: String,
        /// The word before that point (`None` at the start).
        after: Option<String>,
        /// The word found there (`None` at the end of the phrase).
        found: Option<String>,
    },
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::UnknownWords { phrase, words } => {
                let list: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
                write!(
                    f,
                    "unknown word{} in \"{phrase}\": {}; the shapes grammar knows only: {}",
                    if words.len() == 1 { "" } else { "s" },
                    list.join(", "),
                    vocabulary().join(" ")
                )
            }
            ParseError::Unexpected {
                phrase,
                expected,
                after,
                found,
            } => {
                write!(
                    f,
                    "cannot read \"{phrase}\" as a shapes scene: expected {expected}"
                )?;
                match after {
                    Some(w) => write!(f, " after \"{w}\"")?,
                    None => write!(f, " at the start")?,
                }
                match found {
                    Some(w) => write!(f, ", found \"{w}\""),
                    None => write!(f, ", found the end of the phrase"),
                }
            }
        }
    }
}

impl std::error::Error for ParseError {}

const ARTICLES: [&str; 3] = ["a", "an", "the"];
const GLUE: [&str; 11] = [
    "there", "is", "on", "at", "in", "to", "of", "next", "and", "above", "below",
];
const PLACES: [&str; 7] = [
    "left", "right", "top", "bottom", "middle", "centre", "center",
];

/// Every word the parser accepts (captions use all but "the" as an article and "center"),
/// sorted, without repeats.
pub fn vocabulary() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ARTICLES
        .into_iter()
        .chain(GLUE)
        .chain(PLACES)
        .chain(Size::ALL.map(Size::word))
        .chain(Colour::ALL.map(Colour::word))
        .chain(Shape::ALL.map(Shape::word))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// "a big red circle" (the size only when `sized`), with whatever attributes are given.
fn object_words(o: &Object, sized: bool) -> String {
    let mut words: Vec<&str> = Vec::new();
    if let (true, Some(s)) = (sized, o.size) {
        words.push(s.word());
    }
    if let Some(c) = o.colour {
        words.push(c.word());
    }
    words.push(o.shape.word());
    format!("{} {}", article(words[0]), words.join(" "))
}

/// The position phrases of `p`; the first is the canonical one.
fn position_phrases(p: Position) -> &'static [&'static str] {
    match p {
        Position::Left => &["on the left"],
        Position::Right => &["on the right"],
        Position::Top => &["at the top"],
        Position::Bottom => &["at the bottom"],
        Position::Middle => &["in the middle", "in the centre"],
    }
}

/// The relation phrases of `r`; the first is the canonical one.
fn relation_phrases(r: Relation) -> &'static [&'static str] {
    match r {
        Relation::LeftOf => &["to the left of", "left of"],
        Relation::RightOf => &["to the right of", "right of"],
        Relation::Above => &["above"],
        Relation::Below => &["below"],
        Relation::NextTo => &["next to"],
    }
}

/// One canonical caption of a scene, with every attribute it gives: "a big red circle on the
/// left", "a small blue square to the left of a big green star", "a red circle and a star".
pub fn describe(scene: &Scene) -> String {
    match scene {
        Scene::One { object, position } => {
            let mut s = object_words(object, true);
            if let Some(p) = position {
                s = format!("{s} {}", position_phrases(*p)[0]);
            }
            s
        }
        Scene::Two {
            first,
            relation,
            second,
        } => {
            let link = relation.map_or("and", |r| relation_phrases(r)[0]);
            format!(
                "{} {link} {}",
                object_words(first, true),
                object_words(second, true)
            )
        }
    }
}

/// Up to `n` different captions, all true of `scene`, in random order.
///
/// For a concrete scene there are always at least five. One shape: with or without "there is",
/// the size and the position (8 forms). Two shapes: the relation as drawn and turned round
/// ("a above b" / "b below a"), "next to" for side-by-side shapes, and "a and b", with or without
/// sizes and "there is"; at least half of the captions state the relation itself.
pub fn captions<R: Rng + ?Sized>(scene: &Scene, n: usize, rng: &mut R) -> Vec<String> {
    let there = |s: String| format!("there is {s}");
    let mut ordered: Vec<String> = Vec::new();
    match scene {
        Scene::One { object, position } => {
            let mut forms = Vec::new();
            for sized in [true, false] {
                let o = object_words(object, sized);
                forms.push(o.clone());
                forms.push(there(o.clone()));
                if let Some(p) = position {
                    let place = |rng: &mut R| pick(rng, position_phrases(*p));
                    forms.push(format!("{o} {}", place(rng)));
                    forms.push(there(format!("{o} {}", place(rng))));
                }
            }
            forms.shuffle(rng);
            ordered = forms;
        }
        Scene::Two {
            first,
            relation,
            second,
        } => {
            let (mut stated, mut beside, mut and) = (Vec::new(), Vec::new(), Vec::new());
            for sized in [true, false] {
                let (a, b) = (object_words(first, sized), object_words(second, sized));
                for framed in [false, true] {
                    let frame = |s: String| if framed { there(s) } else { s };
                    if let Some(r) = relation.filter(|&r| r != Relation::NextTo) {
                        let fwd = pick(rng, relation_phrases(r));
                        let inv = pick(rng, relation_phrases(r.inverse()));
                        stated.push(frame(format!("{a} {fwd} {b}")));
                        stated.push(frame(format!("{b} {inv} {a}")));
                    }
                    if relation.is_some_and(Relation::is_horizontal) {
                        beside.push(frame(format!("{a} next to {b}")));
                        beside.push(frame(format!("{b} next to {a}")));
                    }
                    and.push(frame(format!("{a} and {b}")));
                    and.push(frame(format!("{b} and {a}")));
                }
            }
            for group in [&mut stated, &mut beside, &mut and] {
                group.shuffle(rng);
            }
            // Interleave so that the first n hold the relation about half of the time.
            let (mut s, mut b, mut a) = (stated.into_iter(), beside.into_iter(), and.into_iter());
            loop {
                let round: Vec<String> = [s.next(), s.next(), b.next(), a.next()]
                    .into_iter()
                    .flatten()
                    .collect();
                if round.is_empty() {
                    break;
                }
                ordered.extend(round);
            }
        }
    }
    let mut out: Vec<String> = Vec::with_capacity(n);
    for c in ordered {
        if out.len() == n {
            break;
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.shuffle(rng);
    out
}

/// `n` different phrases the grammar generates, each a caption of a random concrete scene (to
/// make prompts files). Fewer only if the grammar runs out, which it does not below ~10^5.
pub fn phrases<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(n);
    let mut tries = 0usize;
    while out.len() < n && tries < 100 * n + 1000 {
        tries += 1;
        let scene = Scene::random(rng);
        let Some(phrase) = captions(&scene, 1, rng).pop() else {
            continue;
        };
        if seen.insert(phrase.clone()) {
            out.push(phrase);
        }
    }
    out
}

/// Reads a phrase into a scene description. Case and ASCII punctuation are ignored; articles,
/// "there is", sizes, colours, positions and relations are optional (only a shape is required).
pub fn parse(phrase: &str) -> Result<Scene, ParseError> {
    let vocab = vocabulary();
    let mut words = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for raw in phrase.split_whitespace() {
        let w: String = raw
            .chars()
            .filter(|c| !c.is_ascii_punctuation())
            .flat_map(char::to_lowercase)
            .collect();
        if w.is_empty() {
            continue;
        }
        if vocab.binary_search(&w.as_str()).is_err() && !unknown.contains(&w) {
            unknown.push(w.clone());
        }
        words.push(w);
    }
    if !unknown.is_empty() {
        return Err(ParseError::UnknownWords {
            phrase: phrase.trim().to_owned(),
            words: unknown,
        });
    }
    let mut p = Parser {
        phrase: phrase.trim(),
        words: &words,
        at: 0,
    };
    p.phrase()
}

const SHAPES_EXPECTED: &str = "a shape (circle, square, triangle, star or diamond)";

struct Parser<'a> {
    phrase: &'a str,
    words: &'a [String],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.words.get(self.at).map(String::as_str)
    }

    fn eat(&mut self, word: &str) -> bool {
        let hit = self.peek() == Some(word);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn error(&self, expected: &str) -> ParseError {
        ParseError::Unexpected {
            phrase: self.phrase.to_owned(),
            expected: expected.to_owned(),
            after: self.at.checked_sub(1).map(|i| self.words[i].clone()),
            found: self.peek().map(str::to_owned),
        }
    }

    fn expect(&mut self, word: &str) -> Result<(), ParseError> {
        if self.eat(word) {
            Ok(())
        } else {
            Err(self.error(&format!("\"{word}\"")))
        }
    }

    fn phrase(&mut self) -> Result<Scene, ParseError> {
        if self.eat("there") {
            self.expect("is")?;
        }
        let first = self.object()?;
        let scene = if self.peek().is_none() {
            Scene::One {
                object: first,
                position: None,
            }
        } else if let Some(position) = self.position()? {
            Scene::One {
                object: first,
                position: Some(position),
            }
        } else if self.eat("and") {
            let second = self.object()?;
            Scene::Two {
                first,
                relation: None,
                second,
            }
        } else if let Some(relation) = self.relation()? {
            let second = self.object()?;
            Scene::Two {
                first,
                relation: Some(relation),
                second,
            }
        } else {
            return Err(self.error(
                "the end of the phrase, a position (on the left, on the right, at the top, at \
                 the bottom, in the middle), a relation (left of, right of, above, below, next \
                 to) or \"and\"",
            ));
        };
        if self.peek().is_some() {
            return Err(self.error("the end of the phrase"));
        }
        Ok(scene)
    }

    fn object(&mut self) -> Result<Object, ParseError> {
        for a in ARTICLES {
            if self.eat(a) {
                break;
            }
        }
        let size = Size::ALL.into_iter().find(|s| self.eat(s.word()));
        let colour = Colour::ALL.into_iter().find(|c| self.eat(c.word()));
        let shape = Shape::ALL
            .into_iter()
            .find(|s| self.eat(s.word()))
            .ok_or_else(|| {
                self.error(match (size, colour) {
                    (_, Some(_)) => SHAPES_EXPECTED,
                    (Some(_), None) => "a colour or a shape",
                    (None, None) => "a size (small, big), a colour or a shape",
                })
            })?;
        Ok(Object {
            shape,
            colour,
            size,
        })
    }

    fn position(&mut self) -> Result<Option<Position>, ParseError> {
        let choices: &[(&str, Position)] = if self.eat("on") {
            &[("left", Position::Left), ("right", Position::Right)]
        } else if self.eat("at") {
            &[("top", Position::Top), ("bottom", Position::Bottom)]
        } else if self.eat("in") {
            &[
                ("middle", Position::Middle),
                ("centre", Position::Middle),
                ("center", Position::Middle),
            ]
        } else {
            return Ok(None);
        };
        self.eat("the");
        match choices.iter().find(|(w, _)| self.eat(w)) {
            Some(&(_, p)) => Ok(Some(p)),
            None => {
                let names: Vec<String> = choices.iter().map(|(w, _)| format!("\"{w}\"")).collect();
                Err(self.error(&names.join(" or ")))
            }
        }
    }

    fn relation(&mut self) -> Result<Option<Relation>, ParseError> {
        if self.eat("above") {
            return Ok(Some(Relation::Above));
        }
        if self.eat("below") {
            return Ok(Some(Relation::Below));
        }
        if self.eat("next") {
            self.expect("to")?;
            return Ok(Some(Relation::NextTo));
        }
        let to = self.eat("to");
        if to {
            self.eat("the");
        }
        let r = if self.eat("left") {
            Relation::LeftOf
        } else if self.eat("right") {
            Relation::RightOf
        } else if to {
            return Err(self.error("\"left\" or \"right\""));
        } else {
            return Ok(None);
        };
        self.expect("of")?;
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::normalize_joined;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_caption_parses_back_to_a_description_of_its_scene() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let vocab = vocabulary();
        for _ in 0..2000 {
            let scene = Scene::random(&mut rng);
            let caps = captions(&scene, 5, &mut rng);
            assert_eq!(caps.len(), 5, "{scene:?}: {caps:?}");
            for (i, c) in caps.iter().enumerate() {
                assert!(!caps[..i].contains(c), "repeated caption {c}");
                assert!(
                    c.split(' ').all(|w| vocab.contains(&w)),
                    "caption outside the vocabulary: {c}"
                );
                assert!(c.chars().all(|ch| ch == ' ' || ch.is_ascii_lowercase()));
                for text in [c.clone(), normalize_joined(c)] {
                    let parsed = parse(&text).unwrap_or_else(|e| panic!("{e}"));
                    assert!(
                        parsed.describes(&scene),
                        "{text:?} is not true of {scene:?}"
                    );
                }
            }
            let canonical = describe(&scene);
            assert_eq!(parse(&canonical).unwrap(), scene, "{canonical}");
        }
    }

    #[test]
    fn two_shape_captions_state_the_relation_and_use_an_before_vowels() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let big = |shape, colour| Object {
            shape,
            colour: Some(colour),
            size: Some(Size::Big),
        };
        let scene = Scene::Two {
            first: big(Shape::Star, Colour::Orange),
            relation: Some(Relation::Above),
            second: big(Shape::Circle, Colour::Red),
        };
        for _ in 0..50 {
            let caps = captions(&scene, 5, &mut rng);
            let stating = caps
                .iter()
                .filter(|c| c.contains("above") || c.contains("below"))
                .count();
            assert!(stating >= 3, "{caps:?}");
            assert!(caps.iter().all(|c| !c.contains("next to")), "{caps:?}");
            let one = captions(
                &Scene::One {
                    object: big(Shape::Star, Colour::Orange),
                    position: Some(Position::Middle),
                },
                8,
                &mut rng,
            );
            assert_eq!(one.len(), 8);
            assert!(one
                .iter()
                .all(|c| c.contains("an orange") || c.contains("a big")));
        }
        assert_eq!(describe(&scene), "a big orange star above a big red circle");
    }

    #[test]
    fn parses_loose_variants() {
        let cases = [
            ("circle", "a circle"),
            ("A Big RED circle.", "a big red circle"),
            (
                "there is a small star in the center",
                "a small star in the middle",
            ),
            (
                "an orange triangle on left",
                "an orange triangle on the left",
            ),
            (
                "the red square left of a green star",
                "a red square to the left of a green star",
            ),
            (
                "big circle next to a pink diamond",
                "a big circle next to a pink diamond",
            ),
            (
                "a black star and a yellow square",
                "a black star and a yellow square",
            ),
            (
                "blue circle below red circle",
                "a blue circle below a red circle",
            ),
        ];
        for (phrase, canonical) in cases {
            let scene = parse(phrase).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(describe(&scene), canonical);
        }
    }

    #[test]
    fn unknown_words_are_listed() {
        let e = parse("a purple hexagon on the moon, hexagon").unwrap_err();
        assert_eq!(
            e,
            ParseError::UnknownWords {
                phrase: "a purple hexagon on the moon, hexagon".into(),
                words: vec!["hexagon".into(), "moon".into()],
            }
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "unknown words in \"a purple hexagon on the moon, hexagon\": \"hexagon\", \"moon\";"
            ),
            "{msg}"
        );
        assert!(msg.contains("circle"), "{msg}");
        let e = parse("a cat eating a mouse").unwrap_err().to_string();
        assert!(e.contains("\"cat\", \"eating\", \"mouse\""), "{e}");
    }

    #[test]
    fn misplaced_known_words_say_what_was_expected() {
        let msg = |p: &str| parse(p).unwrap_err().to_string();
        assert_eq!(
            msg("a red big circle"),
            "cannot read \"a red big circle\" as a shapes scene: expected a shape (circle, \
             square, triangle, star or diamond) after \"red\", found \"big\""
        );
        assert!(msg("").contains(
            "expected a size (small, big), a colour or a shape at the start, found the end"
        ));
        assert!(msg("a circle on the top")
            .contains("expected \"left\" or \"right\" after \"the\", found \"top\""));
        assert!(msg("a circle left a star").contains("expected \"of\" after \"left\", found \"a\""));
        assert!(msg("a circle above").contains("found the end of the phrase"));
        assert!(msg("a circle a star").contains("a relation (left of"));
        assert!(msg("a circle on the left a star")
            .contains("expected the end of the phrase after \"left\""));
        assert!(msg("there a circle").contains("expected \"is\" after \"there\""));
    }

    #[test]
    fn phrases_are_distinct_and_parse() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let ps = phrases(300, &mut rng);
        assert_eq!(ps.len(), 300);
        let set: std::collections::BTreeSet<&String> = ps.iter().collect();
        assert_eq!(set.len(), 300);
        assert!(ps.iter().all(|p| parse(p).is_ok()));
        assert_eq!(phrases(300, &mut ChaCha8Rng::seed_from_u64(2)), ps);
    }

    #[test]
    fn vocabulary_is_sorted_and_complete() {
        let v = vocabulary();
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        for w in [
            "a", "an", "there", "is", "next", "centre", "diamond", "black", "small",
        ] {
            assert!(v.contains(&w), "{w}");
        }
        assert_eq!(v.len(), 36);
    }
}
