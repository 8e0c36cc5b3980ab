"""vLLM general plugin (entry point `vllm.general_plugins`): registers the ULD wrapper models."""

ARCHITECTURE = "UldLlamaForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "uld_serve.engine.model:UldLlamaForCausalLM")
