"""A tiny DeepDanbooru project folder in the layout the `deepdanbooru` package reads.

project.json (image size, model name), model-<model>.h5 (a real Keras model: 32×32 RGB in 0…1 →
sigmoid per tag), tags.txt (every tag, one a line, ratings as "rating:safe"…),
tags-general.txt and tags-character.txt. Weights are seeded: the same project every build.
"""

from __future__ import annotations

import json
from pathlib import Path

SIZE = 32
MODEL_NAME = "resnet_custom_v3"
GENERAL = ["1girl", "solo", "long_hair", "smile", "outdoors", "sky", "night", "star_(sky)", "grass", "water"]
CHARACTER = ["hatsune_miku", "kaname_madoka"]
RATINGS = ["rating:safe", "rating:questionable", "rating:explicit"]


def build_tiny_deepdanbooru(folder: Path, *, seed: int = 0) -> Path:
    """Write the project into `folder` (once) and return `folder`. Imports TensorFlow (slow)."""
    folder = Path(folder)
    model_file = folder / f"model-{MODEL_NAME}.h5"
    if model_file.exists():
        return folder
    from preprocess.tagging import import_tensorflow

    import_tensorflow()  # before keras: see import_tensorflow
    import keras

    folder.mkdir(parents=True, exist_ok=True)
    tags = GENERAL + CHARACTER + RATINGS
    (folder / "tags.txt").write_text("\n".join(tags) + "\n")
    (folder / "tags-general.txt").write_text("\n".join(GENERAL) + "\n")
    (folder / "tags-character.txt").write_text("\n".join(CHARACTER) + "\n")
    (folder / "project.json").write_text(json.dumps(
        {"image_width": SIZE, "image_height": SIZE, "database_path": None, "minimum_tag_count": 20,
         "model": MODEL_NAME, "minibatch_size": 32, "epoch_count": 10, "mixed_precision": False}, indent=2))

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(tags), activation="sigmoid", bias_initializer=keras.initializers.RandomNormal(0, 1.5, seed=seed))(x)
    model = keras.Model(inputs, outputs, name=MODEL_NAME)
    tmp = folder / "model.tmp.h5"
    model.save(tmp)
    tmp.replace(model_file)
    return folder
