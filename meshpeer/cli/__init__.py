"""The operator CLI, ``meshpeer`` (docs/cli.md): argparse front end (:mod:`meshpeer.cli.main`),
where a shard is and how to reach it (:mod:`meshpeer.cli.config`), and pure table rendering
(:mod:`meshpeer.cli.format`)."""
