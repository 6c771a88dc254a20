"""Speaker diarization internals, one module per stage (the handler's contract, ``Diarizer`` and the
merge of turns with words, is ``diarization_utils`` at the top level).

- ``speech_detection``: where speech is (Silero VAD behind a digital-silence gate); also cuts ASR's windows
- ``blocks``: long audio diarized over its speech only, in blocks whose speakers are linked
- ``pipeline``: the pyannote pipeline: segmentation, embeddings, clustering, reconstruction, reassignment
- ``embedding``: the CAM++ speaker-embedding model
- ``speaker_identification``: diarized speakers named after reference voices
- ``voiceprints``: the store of enrolled speakers

Nothing is imported here: the ASR path imports ``speech_detection`` without loading pyannote.
"""
