"""Data layer: LAION-layout shards, the resumable training stream, embedding sidecars, caption
pairs and the Twemoji demo dataset. Public names are re-exported here."""
from .captions import CaptionChoice, CaptionPolicy
from .config import StreamConfig
from .images import IMAGE_REASONS, DecodedImage, ImageDecodeError, decode_image
from .pairs import CaptionPairDataset, CaptionRecord, CaptionTriple, PairConfig, make_triples, read_caption_records
from .samples import SAMPLE_REASONS, Checked, Sample, check_sample, decode_member, field_captions
from .shards import ShardSample, safe_key, samples_from_folder, samples_from_img2dataset, write_shards
from .sidecar import SidecarMeta, SidecarMismatchError, SidecarReader, SidecarWriter, sidecar_path
from .spec import DataSourceError, parse_sources
from .stream import ImageTextStream, TrackedLoader
from .stream_samples import NoValidSamplesError
from .transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform, TransformConfig, normalize_batch

__all__ = [
    "IMAGE_REASONS", "SAMPLE_REASONS", "Checked", "DecodedImage", "ImageDecodeError", "Sample", "check_sample",
    "decode_image", "field_captions", "safe_key",
    "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "CaptionChoice", "CaptionPairDataset", "CaptionPolicy", "CaptionRecord",
    "CaptionTriple", "DataSourceError", "ImageTextStream", "ImageTransform", "NoValidSamplesError", "PairConfig",
    "ShardSample", "SidecarMeta", "SidecarMismatchError", "SidecarReader", "SidecarWriter", "StreamConfig",
    "TrackedLoader", "TransformConfig", "decode_member", "make_triples", "normalize_batch", "parse_sources",
    "read_caption_records", "samples_from_folder", "samples_from_img2dataset", "sidecar_path", "write_shards",
]
