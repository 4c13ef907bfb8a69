"""Model backends: one interface (`base.Backend`), two implementations (`embedded`, `tfserving`)."""
