"""scorelib command line: train, sample, evaluate, compute likelihoods and benchmark samplers.

    python main.py --config=ncsn_digits --workdir=runs/digits            # train + sample + evaluate
    python main.py --config=ncsn_cifar --config.training.batch_size=64   # any config field can be overridden
    python main.py --config=ncsn_digits --workdir=runs/digits --mode=sample --config.sampling.method=ode
    python main.py --config=ncsnv2_cifar --mode=sample --checkpoint=checkpoint.pth   # a published checkpoint
    python main.py --config=openai:cifar10_uncond --mode=sample --checkpoint=cifar10_uncond_50M_500K.pt
    python main.py --config=toy_gmm --mode=bench --quick                  # the sampler benchmark

--config takes a name from configs/ (NAME:ARG passes ARG to its get_config) or a path to a config file.
The command line itself is scorelib/cli.py.
"""

from scorelib.cli import run_command_line

if __name__ == "__main__":
    run_command_line()
