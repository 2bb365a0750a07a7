"""Input and configuration: bundled datasets and tables (:mod:`.datasets`) and YAML
configs for the command line (:mod:`.config`)."""
