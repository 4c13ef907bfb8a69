"""The transport-free core: errors, the model contract, preprocessing, validation, prediction,
the classifier, observation and the backends. It imports no gRPC servicer, no rq and no trainer;
the front (service/), the batch system (worker/) and the trainer (trainer/) all build on it."""
