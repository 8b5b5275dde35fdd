"""``cnnbench gradcheck``: the hand-written NumPy MLP's loss and gradients against autograd's."""

from __future__ import annotations

import click


@click.command(name="gradcheck")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="images in the check batch")
@click.option("--inputs", type=click.IntRange(min=1), default=12, show_default=True, help="input features")
@click.option("--hidden", type=click.IntRange(min=1), default=7, show_default=True, help="hidden sigmoid units")
@click.option("--outputs", type=click.IntRange(min=1), default=4, show_default=True, help="output units (one-hot targets)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed for weights and batch")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True,
              help="largest accepted absolute difference")
@click.option("--loss", "loss_kind", type=click.Choice(("mean", "half-sum")), default="mean", show_default=True,
              help="mean: mean((y - t)^2) over every entry; half-sum: sum((y - t)^2) / (2N), the Fashion-MNIST "
                   "assignment's loss (R1-A: --hidden 3 --outputs 1)")
@click.pass_context
def command(ctx: click.Context, batch_size: int, inputs: int, hidden: int, outputs: int, seed: int, tolerance: float,
            loss_kind: str) -> None:
    """Check numpy_mlp's hand-written backward pass against PyTorch autograd (float64).

    Builds the two-layer sigmoid network with MSE loss in NumPy and a torch module with the same
    weights, runs both on one random batch, and prints the max absolute difference of the loss and
    of every gradient. Exits with 1 if any difference reaches the tolerance.
    """
    from cnnbench.numpy_mlp import NumpyMLP, gradient_differences, random_batch

    net = NumpyMLP.random(inputs, hidden, outputs, seed=seed)
    x, t = random_batch(batch_size, inputs, outputs, seed=seed)
    diffs = gradient_differences(net, x, t, loss_kind)
    loss, grads = net.loss_and_gradients(x, t, loss_kind)
    click.echo(f"numpy_mlp {inputs}-{hidden}-{outputs} (sigmoid, {loss_kind} squared error), float64, batch {batch_size}: "
               f"loss {loss:.10g}, b1 gradient {', '.join(f'{g:.4g}' for g in grads['b1'][:4])}; max |numpy - torch|")
    failed = [name for name, diff in diffs.items() if not diff < tolerance]
    for name, diff in diffs.items():
        verdict = "FAIL" if name in failed else "ok"
        click.echo(f"  {name:<5} {diff:.3e}  {verdict}")
    if failed:
        click.echo(f"gradient check failed: {', '.join(failed)} differ by {tolerance:g} or more", err=True)
        ctx.exit(1)
    click.echo(f"all differences below {tolerance:g}")
