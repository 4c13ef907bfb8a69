"""The trainer's research scripts, run by hand to decide what the release run does, never by it:
candidate networks compared on validation (candidates), the sklesion model measured alone
(sklesion), and two versions' served answers side by side (compare). `dermserve-train` and
`make train` import none of them."""
