"""dermserve's trainer: HAM10000 data, lesion-grouped splits, training, calibration, evaluation,
export and atomic publication of versioned SavedModels."""
