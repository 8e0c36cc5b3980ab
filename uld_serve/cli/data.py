"""`uld setup`: models."""
import typer

from .app import app


@app.command()
def setup(model: str = typer.Option("smollm2-135m-instruct", help="smollm2-135m-instruct or tiny-random")):
    """Prepare the embedded default model (or a tiny random Llama for tests); print its path."""
    from ..core.models import setup_model

    print(setup_model(model))
