"""Request bodies shared by the serving tests: a good row of features, a good transaction, and the
/predict bodies that must be refused, each with the status, field and words of its answer.

test_errors.py checks the answers to CASES; test_fast_path.py checks that a server on the fast path and
one on the route answer each of them alike; test_entity.py builds its edge cases over TRANSACTION.
"""

# A row of the 9 model features, in MODEL_FEATURES order, that every model scores.
GOOD = [120.0, 13.5, 1.0, 8.0, 4.0, 80.0, 320.0, 2.5, 1.5]
# A transaction of a customer, without an event time (the server takes "now").
TRANSACTION = {"customer_id": 5, "amount": 10.0, "category": "fuel", "channel": "online"}

CASES = [
    # (name, body (dict or raw JSON text), status, field, words the message must contain)
    (
        "too few features",
        {"features": GOOD[:7]},
        422,
        "features",
        ["expected 9 numbers", "amount, hour_of_day", "got 7"],
    ),
    ("too many features", {"features": GOOD + [1.0]}, 422, "features", ["expected 9", "got 10"]),
    ("string feature", {"features": [*GOOD[:3], "x", *GOOD[4:]]}, 422, "features[3]", ["expected a number"]),
    ("bool feature", {"features": [True, *GOOD[1:]]}, 422, "features[0]", ["expected a number"]),
    ("features not a list", {"features": "1,2,3"}, 422, "features", ["expected a list"]),
    ("NaN literal", '{"features": [NaN, 13.5, 1, 8, 4, 80, 320, 2.5, 1.5]}', 422, "features[0]", ["finite"]),
    ("Infinity literal", '{"features": [1, 13.5, 1, 8, 4, 80, 320, Infinity, 1.5]}', 422, "features[7]", ["finite"]),
    (
        "-Infinity amount",
        '{"customer_id": 5, "amount": -Infinity, "category": "fuel", "channel": "online"}',
        422,
        "amount",
        ["finite"],
    ),
    ("unknown category", {**TRANSACTION, "category": "toys"}, 422, "category", ["'toys'", "grocery", "gift_cards"]),
    ("unknown channel", {**TRANSACTION, "channel": "web"}, 422, "channel", ["'web'", "in_store, online"]),
    ("missing amount", {k: v for k, v in TRANSACTION.items() if k != "amount"}, 422, "amount", ["required"]),
    ("string customer", {**TRANSACTION, "customer_id": "5"}, 422, "customer_id", ["integer"]),
    ("negative amount", {**TRANSACTION, "amount": -3.0}, 422, "amount", ["greater than or equal"]),
    ("bad timestamp", {**TRANSACTION, "event_timestamp": "yesterday"}, 422, "event_timestamp", ["ISO 8601"]),
    ("neither shape", {"amount": 3.0}, 422, "features", ["'features'", "'customer_id'"]),
    ("not an object", "[1, 2, 3]", 422, "body", ["JSON object"]),
    ("invalid JSON", '{"features": [1, 2', 400, "body", ["not valid JSON"]),
    ("empty body", "", 400, "body", ["empty"]),
    ("instances not a list", {"instances": {"features": GOOD}}, 422, "instances", ["list"]),
    ("empty instances", {"instances": []}, 422, "instances", ["at least one"]),
    (
        "bad instance",
        {"instances": [{"features": GOOD}, {**TRANSACTION, "category": "x"}]},
        422,
        "instances[1].category",
        ["grocery"],
    ),
    ("instance not an object", {"instances": [{"features": GOOD}, 3]}, 422, "instances[1]", ["expected an object"]),
]
