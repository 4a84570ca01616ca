//! CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision"); checkpoint layout of transformers' `CLIPModel` (openai/clip-vit-base-patch32).
