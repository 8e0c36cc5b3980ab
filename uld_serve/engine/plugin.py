"""vLLM general plugin (entry point `vllm.general_plugins`, run in every vLLM process):
registers the ULD wrapper model and, on CPU, the grouped LoRA products, a compiled target
and seeded sampling that survives chunked prefill."""

ARCHITECTURE = "UldLlamaForCausalLM"


def register() -> None:
    from vllm import ModelRegistry
    from vllm.platforms import current_platform

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "uld_serve.engine.model:UldLlamaForCausalLM")
    if current_platform.is_cpu():
        from . import cpu_lora, cpu_sampling

        cpu_lora.install()
        cpu_sampling.install()
        _compile_target_despite_lora(type(current_platform))


def _compile_target_despite_lora(platform) -> None:
    """vLLM's CPU platform turns compilation off whenever LoRA is enabled, because its CPU
    LoRA ops do not trace. ULD forget sets put LoRA on the assistant's layers only, which
    run outside the compiled module (the target's LlamaModel), so the wrapper asks for the
    target to stay compiled (EngineOverrides.compile_target, set when no forget set is weight-level).
    vLLM runs general plugins once per process, so this wraps the method once."""
    from vllm.config import CompilationMode

    from ..core.settings import read_overrides

    original = platform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config):
        requested = vllm_config.compilation_config.mode
        original(cls, vllm_config)
        hf_config = getattr(vllm_config.model_config, "hf_config", None)
        if requested == CompilationMode.VLLM_COMPILE and read_overrides(hf_config).compile_target:
            vllm_config.compilation_config.mode = CompilationMode.DYNAMO_TRACE_ONCE

    platform.check_and_update_config = classmethod(check_and_update_config)
