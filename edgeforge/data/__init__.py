"""Datasets for calibration and evaluation: image folders, .npz, video clips, and bundled real
data (scikit-learn digits, scikit-image photographs and camera-pan clips over them), with the
preprocessing a recipe's input spec asks for (`preprocess.Preprocess`) and calibration-set
definitions (`calib`)."""
