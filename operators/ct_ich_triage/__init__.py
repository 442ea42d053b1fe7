"""Head CT haemorrhage triage: synthetic phantoms, training and the MONAI Deploy application."""
