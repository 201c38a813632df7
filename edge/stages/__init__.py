"""The four pipeline stages (capture -> preprocess -> score -> alert), each a process.

Each module has one ``run(config)`` entry point that returns when the stage has
finished (end of stream, or a stop signal after in-flight work is done).
"""
