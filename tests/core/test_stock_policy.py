"""The out-of-stock decision (pure): apply at zero, undo above, restore what was there, never a no-op write."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cloverwoo_daemon.core.model import Binding, WooRef
from cloverwoo_daemon.core.stock_policy import (
    Applied,
    Change,
    Presentation,
    action_for,
    desired,
    needs_look,
    plan,
)

MSG = "Call us to order"


def binding(stock: int | None, *, tracked: bool = True, excluded: bool = False) -> Binding:
    return Binding("woo:1:0", "SKU-1", "One", WooRef(1), {"downtown": "I1"}, tracked=tracked, excluded=excluded,
                   base_woo=stock, base_clover={"downtown": stock})


def test_desired_only_at_or_below_zero_and_only_for_tracked_synced_bindings() -> None:
    assert desired(binding(0), "hide") == "hide"
    assert desired(binding(-2), "contact") == "contact"
    assert desired(binding(1), "hide") is None
    assert desired(binding(0, tracked=False), "hide") is None
    assert desired(binding(0, excluded=True), "hide") is None
    assert desired(binding(None), "hide") is None


def test_action_for_runtime_then_config_then_global() -> None:
    assert action_for("A", "backorder") == "backorder"
    assert action_for("A", "backorder", {"A": "hide"}) == "hide"
    assert action_for("A", "backorder", {"A": "hide"}, {"A": "contact"}) == "contact"
    assert action_for("A", "backorder", {"A": "bogus"}) == "backorder"


def test_hide_remembers_and_restores_the_previous_visibility() -> None:
    shop = Presentation(catalog_visibility="catalog")
    change, rec = plan("hide", None, shop, message=MSG)
    assert change == Change(catalog_visibility="hidden")
    assert rec == Applied("hide", "catalog", "hidden")
    change, rec2 = plan(None, rec, Presentation(catalog_visibility="hidden"), message=MSG)
    assert change == Change(catalog_visibility="catalog")
    assert rec2 is None


def test_undo_leaves_a_field_the_merchant_changed_by_hand() -> None:
    rec = Applied("hide", "visible", "hidden")
    change, rec2 = plan(None, rec, Presentation(catalog_visibility="search"), message=MSG)
    assert change.empty and rec2 is None


def test_backorder_sets_notify_and_restores_no() -> None:
    change, rec = plan("backorder", None, Presentation(catalog_visibility="visible"), message=MSG)
    assert change == Change(backorders="notify")
    change, rec = plan(None, rec, Presentation(catalog_visibility="visible", backorders="notify"), message=MSG)
    assert change == Change(backorders="no") and rec is None


def test_backorders_already_allowed_are_not_written_either_way() -> None:
    change, rec = plan("backorder", None, Presentation(backorders="yes"), message=MSG)
    assert change.empty and rec == Applied("backorder", "yes", "yes")
    change, rec = plan(None, rec, Presentation(backorders="yes"), message=MSG)
    assert change.empty and rec is None


def test_contact_writes_the_message_and_clears_it() -> None:
    change, rec = plan("contact", None, Presentation(catalog_visibility="visible"), message=MSG)
    assert change == Change(contact_message=MSG)
    change, rec = plan(None, rec, Presentation(catalog_visibility="visible", contact_message=MSG), message=MSG)
    assert change == Change(contact_message="") and rec is None


def test_variation_hide_has_nothing_to_write_but_is_recorded() -> None:
    change, rec = plan("hide", None, Presentation(catalog_visibility=None), message=MSG)
    assert change.empty and rec == Applied("hide", None, None)
    assert not needs_look("hide", rec)
    change, rec = plan(None, rec, Presentation(catalog_visibility=None), message=MSG)
    assert change.empty and rec is None


def test_switching_action_while_out_of_stock_undoes_the_old_one_in_the_same_write() -> None:
    rec = Applied("hide", "visible", "hidden")
    change, rec2 = plan("backorder", rec, Presentation(catalog_visibility="hidden"), message=MSG)
    assert change == Change(catalog_visibility="visible", backorders="notify")
    assert rec2 == Applied("backorder", "no", "notify")


def test_needs_look_only_on_a_transition() -> None:
    assert needs_look("hide", None)
    assert not needs_look(None, None)
    assert not needs_look("hide", Applied("hide", "visible", "hidden"))
    assert needs_look(None, Applied("hide", "visible", "hidden"))


visibility = st.sampled_from(["visible", "catalog", "search", "hidden"])
backorders = st.sampled_from(["no", "notify", "yes"])
actions = st.sampled_from(["hide", "backorder", "contact"])


@given(vis=visibility, bo=backorders, action=actions)
def test_apply_then_undo_restores_the_product_exactly_and_never_writes_a_no_op(vis: str, bo: str, action: str) -> None:
    before = Presentation(catalog_visibility=vis, backorders=bo)
    change, rec = plan(action, None, before, message=MSG)  # type: ignore[arg-type]
    after = Presentation(
        catalog_visibility=change.catalog_visibility or vis,
        backorders=change.backorders or bo,
        contact_message=change.contact_message if change.contact_message is not None else "",
    )
    for field in ("catalog_visibility", "backorders", "contact_message"):
        new = getattr(change, field)
        assert new is None or new != getattr(before, field), "a no-op write"
    # applying again is a no-op
    again, rec_again = plan(action, rec, after, message=MSG)  # type: ignore[arg-type]
    assert again.empty and rec_again == rec
    undo, gone = plan(None, rec, after, message=MSG)
    restored = Presentation(
        catalog_visibility=undo.catalog_visibility or after.catalog_visibility,
        backorders=undo.backorders or after.backorders,
        contact_message=undo.contact_message if undo.contact_message is not None else after.contact_message,
    )
    assert gone is None
    assert restored == before
