"""Jobs on the `gateway` queue: talking to the PSP (issue 4)."""

from __future__ import annotations

import logging

from grimbots.jobs import current_job_id, tracked
from grimbots.logs import event

log = logging.getLogger(__name__)


@tracked
def create_charge(bot_id: int, lead_id: int, offer_id: int, update_id: int) -> str:
    """SEAM FOR ISSUE 4: create the PIX charge for (lead, offer) and send the PIX code.

    Today this only logs and returns: no charge is created and nothing is sent. Issue 4
    replaces the body (charges table with one pending charge per lead+offer, the PSP call,
    the outbox message with the PIX code). The signature and the job id
    (`charge-<bot>-<update>`, see grimbots.jobs.updates) are the contract to keep.
    """
    event(
        log,
        logging.INFO,
        "create_charge placeholder: no PSP yet (issue 4)",
        bot_id=bot_id,
        lead_id=lead_id,
        offer_id=offer_id,
        update_id=update_id,
        job_id=current_job_id(),
    )
    return "not_implemented"
