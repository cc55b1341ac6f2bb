"""Data for the end-to-end task: the generated ShapesVQA set and the LLaVA conversation JSON format."""
from .shapes_vqa import (ALL_KINDS, DIFFICULTY, KINDS, Sample, WordTokenizer, encode_batch, load_llava_json, make_sample, stream,
                         write_llava_json)

__all__ = ["Sample", "WordTokenizer", "make_sample", "encode_batch", "stream", "write_llava_json", "load_llava_json",
           "KINDS", "ALL_KINDS", "DIFFICULTY"]
