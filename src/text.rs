//! Caption text normalisation shared by every place that compares captions or builds a vocabulary.
//!
//! The rules are those of the original captioners (Brownlee's Flickr8k merge model): split on
//! whitespace, lowercase, strip ASCII punctuation inside each token, then drop tokens of one
//! character or fewer and tokens that are not purely alphabetic (digits, mixed tokens).

/// ASCII punctuation, as Python's `string.punctuation`.
fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// Normalise one caption or phrase into tokens.
pub fn normalize(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter_map(|raw| {
            let tok: String = raw
                .chars()
                .filter(|&c| !is_punct(c))
                .flat_map(char::to_lowercase)
                .collect();
            let long_enough = tok.chars().count() > 1;
            (long_enough && tok.chars().all(char::is_alphabetic)).then_some(tok)
        })
        .collect()
}

/// Normalise and join with single spaces (the form captions are stored and compared in).
pub fn normalize_joined(text: &str) -> String {
    normalize(text).join(" ")
}

/// Plain whitespace tokenisation, for corpora that are already tokenised.
pub fn whitespace(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercases_and_strips_punctuation() {
        assert_eq!(
            normalize("A child in a pink dress is climbing up a set of stairs ."),
            ["child", "in", "pink", "dress", "is", "climbing", "up", "set", "of", "stairs"]
        );
        assert_eq!(normalize("Don't STOP!"), ["dont", "stop"]);
    }

    #[test]
    fn drops_short_and_non_alphabetic_tokens() {
        assert_eq!(normalize("a 2 dogs 3rd b x7 ok"), ["dogs", "ok"]);
        assert_eq!(normalize("   "), Vec::<String>::new());
        // A token that becomes one letter after stripping punctuation is dropped too.
        assert_eq!(normalize("I'. dog's"), ["dogs"]);
    }

    #[test]
    fn keeps_non_ascii_letters() {
        assert_eq!(normalize("Café Über"), ["café", "über"]);
    }

    #[test]
    fn joined_form() {
        assert_eq!(
            normalize_joined("Two  guys, playing chess."),
            "two guys playing chess"
        );
    }
}

/// How BLEU input lines are split into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenize {
    /// The caption normalisation of [`normalize`] (the captioners' vocabulary rules).
    #[default]
    Caption,
    /// Split on whitespace only, for text that is already tokenised.
    Whitespace,
}

impl Tokenize {
    pub fn apply(self, text: &str) -> Vec<String> {
        match self {
            Tokenize::Caption => normalize(text),
            Tokenize::Whitespace => whitespace(text),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tokenize::Caption => "caption",
            Tokenize::Whitespace => "whitespace",
        }
    }
}

impl std::str::FromStr for Tokenize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "caption" => Ok(Tokenize::Caption),
            "whitespace" => Ok(Tokenize::Whitespace),
            _ => Err(format!(
                "unknown tokenizer `{s}`: expected caption or whitespace"
            )),
        }
    }
}
