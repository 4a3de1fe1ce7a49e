"""User-facing jobs on top of the stages: the demo (main job), `describe` (`wn-export inspect`), `init`."""
