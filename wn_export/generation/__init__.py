"""Generation: the sampler, the one step loop every host and the bench run, the generator API (streaming),
WAV output and plots.

    from wn_export.generation import open_generator
"""

from wn_export.generation.generator import Generator, Request, generate_to_wav, open_generator
from wn_export.generation.loop import StepLoop, generate, generate_chunks
from wn_export.generation.sampler import Sampler

__all__ = ["Generator", "Request", "generate_to_wav", "open_generator", "StepLoop", "generate", "generate_chunks",
           "Sampler"]
