//! Every score the tool reports, in one place: BLEU with nltk's exact semantics (`bleu`),
//! caption-level figures of the round trip (`captions`: sentence and corpus BLEU of captions,
//! diversity), CLIPScore and CLIP text similarity (`clip_score`), cross-modal retrieval
//! (`retrieval`), and the Frechet distance between embedding sets (`frechet`, `eval-gan`). `run`, `eval`, `eval-clip`, `features` and `bleu` call these; a new metric
//! gets a file here.

pub mod bleu;
pub mod captions;
pub mod clip_score;
pub mod frechet;
pub mod retrieval;
