"""`python -m wanmoe ...` runs the `wanmoe` command."""

from wanmoe.cli import run

if __name__ == "__main__":
    run()
