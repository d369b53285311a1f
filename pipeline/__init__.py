"""Image-inpainting pipeline for Kaggle's Photo Reconstruction competition."""
