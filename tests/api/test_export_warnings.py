"""Export ranges that overlap nothing of the VPC are accepted with a warning naming the field
(issue 17, "Input"; docs/decisions.md, "Export ranges outside the VPC")."""

from __future__ import annotations

from collections.abc import Callable

from tests.api.ctlkit import DEFAULT_LAYOUT, Cluster


def test_an_export_range_outside_the_vpc_is_accepted_with_a_warning(
    make_cluster: Callable[..., Cluster],
) -> None:
    ctl = make_cluster(layout={"ctl1": DEFAULT_LAYOUT["ctl1"]})["ctl1"]
    ctl.vpc("blue", "10.61.0.0/24")
    ctl.vpc("green", "10.62.0.0/24")
    export = {"ranges": ["10.61.0.0/25", "10.99.0.0/16"]}
    created = ctl.peer("blue", "green", export=export)
    assert created["warnings"] == [
        {
            "field": "export.ranges[1]",
            "detail": "10.99.0.0/16 overlaps no subnet of this VPC: it exports nothing now",
        }
    ]
    assert created["export"]["ranges"] == ["10.61.0.0/25", "10.99.0.0/16"]  # accepted as given
    fixed = ctl.put("/v1/vpcs/blue/peerings/to-green", {"export": {"ranges": ["10.61.0.0/25"]}})
    assert fixed["warnings"] == []
    unchanged = ctl.put("/v1/vpcs/blue/peerings/to-green", {"inbound": "all"})
    assert unchanged["warnings"] == []
    assert "warnings" not in ctl.peering("blue", "to-green")  # a write's answer only
