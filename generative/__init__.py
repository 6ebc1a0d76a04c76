"""Generative latent spaces: a VAE (whose latent means are an encoder of the engine,
`vae:<model path>`) and a small DCGAN, trained on CPU on scikit-learn's digits or a
folder of small grey images; pictures of samples, interpolations and attribute
directions as PNG grids.

    data = load_dataset("digits")             # (1797, 1, 16, 16) in [0, 1], labels 0..9
    vae = train_vae(data, on_epoch=print)     # reconstruction and KL reported per epoch
    vae.save("digits.vae")
    encoder = load_vae_encoder("digits.vae")  # an Encoder: preprocess + latent means
    index = open_index("digits-idx", encoder) # created with encoder vae:<absolute path>
    add_dataset(index, encoder, data)         # keys digits/00042, metadata {"label": 3}

    gan = train_gan(data)
    ref = reference_index(tmp, data)          # the labelled digits as pixel vectors
    d = find_direction(gan, ref, 1, 7)        # mean z of samples labelled 7 minus that of 1s
    walk(gan, source_samples(gan, ref, 1, 6), d.vector, [0, .25, .5, .75, 1])

Model files hold only tensors and JSON-able values, written by torch.save and read by
torch.load(weights_only=True) alone (see files.py). Nothing here prints: training takes
an `on_epoch` callback, ingestion a `progress` callback.
"""

from __future__ import annotations

from importlib import import_module

# torch loads with the first name used, not with the package: `latent --help` lists the `vae` and
# `gan` commands through latent.generative.plugin without paying for it
_EXPORTS = {
    "data": ["DIGITS", "Dataset", "load_dataset", "load_digits", "load_folder", "load_reference", "to_model_input",
             "PixelEncoder", "add_arrays", "add_dataset", "reference_index", "label_images"],
    "files": ["ModelFileError", "save_model", "load_model", "check_model_path"],
    "vae": ["VAEModel", "VAEEncoder", "train_vae", "load_vae", "load_vae_encoder", "open_index", "add_images"],
    "gan": ["GANModel", "Direction", "train_gan", "load_gan", "find_direction", "source_samples", "walk",
            "evaluate_direction", "reference"],
    "grids": ["compose", "save_grid"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
