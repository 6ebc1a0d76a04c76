"""The commands of the `latent` command line, grouped by topic (manage, query, explore, serve,
misc), and what they share (common). latent.cli puts them in one group."""
