"""Pure logic of learnloop: no Kafka, no HTTP, no clock or randomness it was not handed.

Each stage is a function ``process(state, input, ...) -> (state, outputs)``;
``streams/`` feeds them from Faust and writes back what they return.
"""
