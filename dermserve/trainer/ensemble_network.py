"""A seed ensemble as one Keras network, with the single network's contract: what
`trainer.ensemble` builds from finished members, and what the export rebuilds with each
member's feature map for Grad-CAM. Apart from the ensemble's command line (trainer/ensemble.py)
so that the export, which needs only the network, does not import the pipeline that calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ENSEMBLE_NAME = "dermserve_ensemble"
FLIP_ENSEMBLE_NAME = "dermserve_ensemble_flip_tta"
"""The Keras names of ensembles, which tell `ensemble_with_feature_maps` how one was built."""


def ensemble_network(members: Sequence[Any], flip_tta: bool = False,
                     feature_maps: bool = False) -> Any:
    """One model `(N, H, W, 3) in [-1, 1] -> [mean log-probabilities (N, K), features (N, sum D)]`
    over `members` (each with that contract and a unique name). With `feature_maps`, the members
    must also output their last feature map (`trainer.network.with_feature_map`) and the
    ensemble outputs them after the two, one per member, of the plain (unflipped) view."""
    import keras
    from keras import ops

    inputs = keras.Input(tuple(members[0].inputs[0].shape[1:]), name="image")
    views = [inputs, ops.flip(inputs, axis=2)] if flip_tta else [inputs]
    log_probabilities, features, maps = [], [], []
    for member in members:
        for position, view in enumerate(views):
            logits, pooled, *member_maps = member(view, training=False)
            log_probabilities.append(ops.log_softmax(logits, axis=-1))
            if position == 0:
                features.append(pooled)
                maps.extend(member_maps)
    mean = ops.mean(ops.stack(log_probabilities, axis=0), axis=0)
    joined = features[0] if len(features) == 1 else ops.concatenate(features, axis=-1)
    outputs = [mean, joined, *maps] if feature_maps else [mean, joined]
    return keras.Model(inputs, outputs, name=FLIP_ENSEMBLE_NAME if flip_tta else ENSEMBLE_NAME)


def ensemble_with_feature_maps(network: Any) -> Any | None:
    """An `ensemble_network` rebuilt over the same member layers (so the same variables) with
    each member's last feature map as an extra output; None if `network` is not an ensemble or
    a member has no feature map."""
    import keras

    from dermserve.trainer.network import with_feature_map

    if network.name not in (ENSEMBLE_NAME, FLIP_ENSEMBLE_NAME):
        return None
    members = [with_feature_map(layer) for layer in network.layers
               if isinstance(layer, keras.Model)]
    if not members or any(member is None for member in members):
        return None
    return ensemble_network(members, network.name == FLIP_ENSEMBLE_NAME, feature_maps=True)
