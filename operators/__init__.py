"""Hounsfield MONAI Deploy operators and applications."""
