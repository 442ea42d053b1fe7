"""The exporter: the validation gate and the destinations results leave through."""
