//! Which phrases a run computes and how each is named and seeded: all three are hashes of the
//! phrase text alone, so that a phrase's share, files and image do not move when lines of the
//! prompts file are added, removed or reordered.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::slug;
use crate::generate::GeneratorKind;

/// `--shard K/N`: the K-th (1-based) of N stable shares of the phrases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a shard: expected K/N with 1 <= K <= N, e.g. 2/8");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether `phrase` belongs to this shard. The share is a hash of the phrase text alone, so
    /// it does not move when lines are added, removed or reordered.
    pub fn contains(&self, phrase: &str) -> bool {
        (digest_u64(&["roundtrip-shard", phrase]) % self.count as u64) as usize + 1 == self.index
    }
}

fn digest_u64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The seed of one phrase: a hash of the run seed and the phrase text, below 2^53 so that it
/// survives JSON readers that parse numbers as doubles. `roundtrip generate PHRASE --seed` with
/// this value draws the same image.
pub fn phrase_seed(run_seed: u64, phrase: &str) -> u64 {
    digest_u64(&["roundtrip-phrase-seed", &run_seed.to_string(), phrase]) >> 11
}

/// The seed of a phrase's image drawn by `generator`: the phrase's one-generator seed
/// ([`phrase_seed`]) for its primary generator (the first of `--generators`, or its `[prefix]`),
/// so that one-generator runs keep their seeds and adding a generator to the list keeps the
/// images already drawn; for each other generator a hash of the run seed, the phrase and the
/// generator's name, so that no two images of a phrase share a seed.
pub fn image_seed(run_seed: u64, phrase: &str, generator: GeneratorKind, primary: bool) -> u64 {
    if primary {
        phrase_seed(run_seed, phrase)
    } else {
        digest_u64(&[
            "roundtrip-generator-seed",
            &run_seed.to_string(),
            phrase,
            generator.name(),
        ]) >> 11
    }
}

/// The file-name stem of a phrase's image drawn by `generator`: [`phrase_id`] for its primary
/// generator, `<phrase_id>-<generator>` for the others (never another phrase's id: those end in
/// 8 hex digits, generator names are not hex).
pub fn image_id(phrase: &str, generator: GeneratorKind, primary: bool) -> String {
    if primary {
        phrase_id(phrase)
    } else {
        format!("{}-{generator}", phrase_id(phrase))
    }
}

/// The file-name stem of a phrase's outputs: its slug plus 8 hex digits of its hash, so that
/// phrases with the same slug ("A cat", "a cat!") never share files.
pub fn phrase_id(phrase: &str) -> String {
    format!(
        "{}-{:08x}",
        slug(phrase),
        digest_u64(&["roundtrip-phrase-id", phrase]) >> 32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_phrases() {
        let phrases: Vec<String> = (0..200).map(|i| format!("phrase number {i}")).collect();
        for n in [1, 2, 3, 7] {
            let shards: Vec<Shard> = (1..=n).map(|k| Shard { index: k, count: n }).collect();
            let mut sizes = vec![0; n];
            for p in &phrases {
                let owners: Vec<usize> = shards
                    .iter()
                    .filter(|s| s.contains(p))
                    .map(|s| s.index)
                    .collect();
                assert_eq!(owners.len(), 1, "{p} in shards {owners:?} of {n}");
                sizes[owners[0] - 1] += 1;
            }
            // A hash spreads 200 phrases roughly evenly.
            assert!(sizes.iter().all(|&s| s >= 200 / n / 2), "{sizes:?}");
        }
    }

    #[test]
    fn shard_specs_parse_and_reject() {
        assert_eq!("2/8".parse::<Shard>(), Ok(Shard { index: 2, count: 8 }));
        for bad in ["0/3", "4/3", "1/0", "x/2", "3", "1/2/3", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("K/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn seeds_and_ids_depend_only_on_the_phrase() {
        assert_eq!(phrase_seed(0, "a cat"), phrase_seed(0, "a cat"));
        assert_ne!(phrase_seed(0, "a cat"), phrase_seed(1, "a cat"));
        assert_ne!(phrase_seed(0, "a cat"), phrase_seed(0, "a cat!"));
        assert!(phrase_seed(u64::MAX, "x") < 1 << 53);
        assert_ne!(phrase_id("A cat"), phrase_id("a cat!"));
        assert!(phrase_id("A cat").starts_with("a-cat-"));
        assert_eq!(phrase_id("<script>").len(), "script-".len() + 8);
    }

    #[test]
    fn each_generator_of_a_phrase_has_its_own_seed_and_files() {
        use GeneratorKind::*;
        // The primary generator keeps the one-generator seed and id, whichever it is.
        for g in [Siren, BigGan] {
            assert_eq!(image_seed(3, "a cat", g, true), phrase_seed(3, "a cat"));
            assert_eq!(image_id("a cat", g, true), phrase_id("a cat"));
        }
        let other = image_seed(3, "a cat", BigGan, false);
        assert_ne!(other, phrase_seed(3, "a cat"));
        assert_ne!(other, image_seed(3, "a cat", Siren, false));
        assert_ne!(other, image_seed(4, "a cat", BigGan, false));
        assert!(other < 1 << 53);
        assert_eq!(
            image_id("a cat", BigGan, false),
            format!("{}-biggan", phrase_id("a cat"))
        );
    }
}
