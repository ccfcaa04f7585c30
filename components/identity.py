"""Keeping live stacks' resources when a component is put between them and their parent.

A URN holds the chain of its parents' types, so a resource that a new component now parents
has a new URN, and `pulumi up` would delete it and create another (a new SuperLink key, a new
SuperNode key that has to be registered again). Until 7975d59 the Platform declared the
tenancies' certificates, keys, registrations and service deliveries itself; `Tenancy`,
`VpnHub` and `Member` now declare them, each under an alias naming the Platform as its parent.

The SDK sends a resource's own aliases only; the engine gives every child of a resource it
found through an alias that alias's parent chain (step_generator.go, generateAliases), so an
alias on a resource also keeps its children's and grandchildren's URNs (the certificate's key,
the delivery's command). `tests/test_identity.py` checks this against the URNs of 7975d59.
"""

from __future__ import annotations

import pulumi


def moved(parent: pulumi.Resource, formerly_under: pulumi.Resource) -> pulumi.ResourceOptions:
    """Options for a child of `parent` that live stacks hold as a child of `formerly_under`."""
    return pulumi.ResourceOptions(parent=parent, aliases=[pulumi.Alias(parent=formerly_under)])
