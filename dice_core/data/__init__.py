"""The data layer."""
from .base import ImageSource, SourceItem, decode_image, try_decode
from .encode import encode_dataset
from .encoders import PixelEncoder, VAEEncoder, load_encoder
from .errors import DataError
from .fashion_mnist import FashionMNIST
from .imagenet import ImageNetFolder
from .loader import LatentBatch, LatentShards, check_lanes, make_loader, read_latent_manifest
from .prepare import prepare_dataset
from .prepared import prepared_images
from .preprocess import center_crop_resize
from .shapes import Shapes
from .shards import read_manifest, read_shard, seal_manifest
from .sources import SOURCE_NAMES, open_source

__all__ = [
    "DataError",
    "FashionMNIST",
    "ImageNetFolder",
    "ImageSource",
    "LatentBatch",
    "LatentShards",
    "PixelEncoder",
    "SOURCE_NAMES",
    "Shapes",
    "SourceItem",
    "VAEEncoder",
    "center_crop_resize",
    "decode_image",
    "encode_dataset",
    "load_encoder",
    "check_lanes",
    "make_loader",
    "open_source",
    "prepare_dataset",
    "prepared_images",
    "read_latent_manifest",
    "read_manifest",
    "read_shard",
    "seal_manifest",
    "try_decode",
]
