from campaigns.cli import run

run()
