"""The API's routers: tokens, model cards, predictions, referrals."""
