"""The soak and chaos harness: a day of a hospital's studies against Hounsfield while faults are injected."""
