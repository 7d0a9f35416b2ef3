//! portcullis-lab
