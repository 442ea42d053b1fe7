"""CT lesion segmentation: synthetic phantoms, preprocessing, training and the MONAI Deploy application."""
