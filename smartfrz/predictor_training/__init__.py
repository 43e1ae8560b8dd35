"""Offline, once: record real training runs, label them in hindsight (rewind harm, CKA), train the predictor that ships in
``smartfrz/weights``. ``python -m smartfrz.predictor_training`` trains it from recorded runs."""
