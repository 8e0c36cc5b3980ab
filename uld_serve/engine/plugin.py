"""vLLM general plugin (entry point `vllm.general_plugins`, run in every vLLM process):
registers the ULD wrapper model and, on CPU, the grouped LoRA products."""

ARCHITECTURE = "UldLlamaForCausalLM"


def register() -> None:
    from vllm import ModelRegistry
    from vllm.platforms import current_platform

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "uld_serve.engine.model:UldLlamaForCausalLM")
    if current_platform.is_cpu():
        from .cpu_lora import install

        install()
