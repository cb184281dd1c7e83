"""The nightly job (``interest pipeline``): its config (:mod:`.config`), its steps
(:mod:`.run`) and the warehouse it publishes (:mod:`.warehouse`)."""
