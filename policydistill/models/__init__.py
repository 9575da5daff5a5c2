"""Generator architectures (image/video nets and small action heads). Policies of the pi0
family live in ``policydistill.policies``; both are reachable by name through
``policydistill.zoo``."""
