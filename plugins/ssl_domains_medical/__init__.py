"""Alice and contrastive3d: 3-D medical self-supervised pretraining on MONAI (NIfTI / DICOM)."""
