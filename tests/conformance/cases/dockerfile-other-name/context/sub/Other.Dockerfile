FROM conformance-base:1
COPY a /a
