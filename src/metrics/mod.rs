//! Every score the tool reports, in one place: BLEU with nltk's exact semantics (`bleu`) and in
//! pycocoevalcap's flavour (`bleu::coco`), the captioning community's CIDEr-D (`cider`) and
//! ROUGE-L (`rouge`) as pycocoevalcap 1.2 computes them, all of them over a corpus at once
//! (`scores`), caption-level figures of the round trip (`captions`: sentence and corpus BLEU of
//! captions, ROUGE-L, diversity), CLIPScore and CLIP text similarity (`clip_score`), cross-modal
//! retrieval (`retrieval`), and the Frechet distance between embedding sets (`frechet`,
//! `eval-gan`). `run`, `eval`, `eval-clip`, `features`, `bleu` and `score` call these; a new
//! metric gets a file here.

pub mod bleu;
pub mod captions;
pub mod cider;
pub mod clip_score;
pub mod frechet;
pub mod retrieval;
pub mod rouge;
pub mod scores;
