"""Seeded sampling on vLLM's CPU backend.

A prompt prefilled over several steps (chunked prefill: its tokens exceed one step's budget,
alone or beside other requests) samples a token at each partial step, and vLLM throws that
token away. vLLM 0.32 then rewinds a seeded request's generator by moving its Philox offset
back (`GPUModelRunner._bookkeeping_sync`, inherited by the CPU runner). A CPU generator
(mt19937) has no offset: the first seeded request cut this way killed the engine, and every
sampled request through `uld_serve` is seeded. Here the CPU runner keeps those generators'
states before sampling and puts them back after (the same rewind, done by state), and hides
them from vLLM's offset rewind. A seeded request's tokens then do not depend on where its
prompt was cut, as on GPU.
"""
import numpy as np


def discarded_generators(runner) -> dict:
    """Batch index -> generator of the seeded requests whose token this step is thrown away."""
    count = runner.input_batch.num_reqs
    generators = runner.input_batch.generators
    return {int(i): generators[int(i)] for i in np.nonzero(runner.discard_request_mask.np[:count])[0]
            if int(i) in generators}


def install() -> None:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if getattr(CPUModelRunner, "_uld_rewinds_by_state", False):
        return
    sample, bookkeeping = CPUModelRunner._sample, CPUModelRunner._bookkeeping_sync

    def _sample(self, *args, **kwargs):
        states = {i: generator.get_state() for i, generator in discarded_generators(self).items()}
        output = sample(self, *args, **kwargs)
        for i, state in states.items():
            self.input_batch.generators[i].set_state(state)
        return output

    def _bookkeeping_sync(self, *args, **kwargs):
        hidden = discarded_generators(self)
        for i in hidden:
            del self.input_batch.generators[i]
        try:
            return bookkeeping(self, *args, **kwargs)
        finally:
            self.input_batch.generators.update(hidden)

    CPUModelRunner._sample, CPUModelRunner._bookkeeping_sync = _sample, _bookkeeping_sync
    CPUModelRunner._uld_rewinds_by_state = True
