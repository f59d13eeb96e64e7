"""What the bots say to a buyer about a charge and its delivery (one place to translate)."""

from __future__ import annotations

from grimbots.pix import brl_label


def delivery_text(offer_name: str, link: str) -> str:
    return f"Payment received, thank you! Your access to {offer_name}:\n{link}"


def pix_code_text(offer_name: str, amount_cents: int, code: str) -> str:
    return (
        f"PIX for {offer_name} - {brl_label(amount_cents)}\n"
        "Copy the code below and paste it in your bank app (PIX copia e cola):\n\n"
        f"{code}"
    )
