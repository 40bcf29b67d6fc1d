"""Layers built on the sparse-attention core."""

from gtlib.nn.gat_conv import GATConv
from gtlib.nn.gatv2_conv import GATv2Conv
from gtlib.nn.gps_conv import GPSConv
from gtlib.nn.large_gt import LargeGT
from gtlib.nn.mlp_score import MLPScore
from gtlib.nn.particle_transformer import ParticleTransformer
from gtlib.nn.transformer_conv import TransformerConv

__all__ = [
    "GATConv",
    "GATv2Conv",
    "GPSConv",
    "LargeGT",
    "MLPScore",
    "ParticleTransformer",
    "TransformerConv",
]
from gtlib.nn.exphormer_conv import ExphormerConv  # noqa: E402

__all__ += ["ExphormerConv"]
from gtlib.nn.octree_transformer import OctreeTransformer  # noqa: E402

__all__ += ["OctreeTransformer"]
from gtlib.nn.cross_scale_fusion import CrossScaleFusion  # noqa: E402

__all__ += ["CrossScaleFusion"]
